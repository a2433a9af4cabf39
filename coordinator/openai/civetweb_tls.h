// HTTPS for moe-openai-server (vLLM's --ssl-certfile / --ssl-keyfile) through civetweb's own TLS.
//
// civetweb loads OpenSSL at run time by name and, as Debian 12 builds it, expects OpenSSL 1.1's
// functions; PrepareCivetwebTls loads the small library that supplies the one OpenSSL 3 renamed
// (civetweb_openssl3_compat.cc says how), so civetweb's handshakes work with the system's OpenSSL 3.
// The certificate and key are loaded by this code, not by civetweb (whose ssl_certificate option
// wants both in one file): its init_ssl callback hands over the SSL_CTX it made.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace moe::openai {

// vLLM's HTTPS flags.
struct HttpsOptions {
  std::string certfile;  // --ssl-certfile: the certificate chain (PEM, the server's certificate first)
  std::string keyfile;   // --ssl-keyfile: its unencrypted PEM private key
  std::string ca_certs;  // --ssl-ca-certs: PEM roots that clients' certificates are verified against
  // --ssl-cert-reqs (Python's ssl.CERT_*, as vLLM takes it): 0 no client certificate asked for,
  // 1 one asked for and verified when given, 2 one required (mutual TLS).
  int cert_reqs = 0;
  bool enabled() const { return !certfile.empty(); }
};

// The flags' combinations: both files or neither, --ssl-ca-certs and --ssl-cert-reqs only with
// them, --ssl-cert-reqs 0-2 and above 0 only with --ssl-ca-certs. InvalidArgument naming the flag.
absl::Status CheckHttpsFlags(const HttpsOptions& https);

// A build without OpenSSL 3's development files has no HTTPS: each function below then fails
// saying so (FailedPrecondition), and LoadTlsFiles returns -1.

// Loads the files into a throwaway TLS context, as LoadTlsFiles will: InvalidArgument naming
// --ssl-certfile, --ssl-keyfile or --ssl-ca-certs when a file cannot be read, holds no PEM
// certificate or key, or the key is not the certificate's. Called before anything else starts, so a
// bad file stops the server at once.
absl::Status CheckTlsFiles(const HttpsOptions& https);

// Readies civetweb's TLS once per process: the compatibility library (beside the executable, or
// where the build put it), then checks that civetweb will find libssl.so and libcrypto.so with every
// function it needs, and initialises civetweb with TLS. FailedPrecondition naming what is missing
// (civetweb would otherwise die in its first handshake).
absl::Status PrepareCivetwebTls();

// civetweb's init_ssl callback's work: the files into civetweb's SSL_CTX (an SSL_CTX*), TLS 1.2 at
// least, clients' certificates asked for as cert_reqs says. 1 when done (civetweb then uses the
// context as it is), -1 when not (civetweb's start fails).
int LoadTlsFiles(void* ssl_ctx, const HttpsOptions& https);

}  // namespace moe::openai
