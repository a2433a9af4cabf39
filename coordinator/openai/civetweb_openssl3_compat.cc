// A shared library moe-openai-server loads (civetweb_tls.cc) before civetweb starts its TLS; nothing
// links it.
//
// Debian 12's civetweb is built for OpenSSL 1.1's API and loads OpenSSL at run time: it opens
// "libssl.so" and looks each function up by name. OpenSSL 3 renamed SSL_get_peer_certificate to
// SSL_get1_peer_certificate (the old name is only a macro in its headers), so civetweb's pointer for
// it stays null, and the first TLS handshake calls it: the process dies. This library's soname is
// "libssl.so", so once it is loaded the dynamic loader answers civetweb's dlopen("libssl.so") with
// it; civetweb's lookups then find the old name here and every other function in libssl.so.3, which
// this library depends on. (The two names are one function: both return the peer's certificate
// with a reference the caller frees, as civetweb does.)
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate

extern "C" __attribute__((visibility("default"))) X509* SSL_get_peer_certificate(const SSL* ssl) {
  return SSL_get1_peer_certificate(ssl);
}
