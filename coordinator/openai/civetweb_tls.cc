#include "coordinator/openai/civetweb_tls.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <string>

#include <civetweb.h>

#include "absl/strings/str_cat.h"

#if MOE_HTTPS
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#endif

namespace moe::openai {

#if MOE_HTTPS
namespace {

constexpr char kCompatLibrary[] = "libmoe-civetweb-openssl3.so";

// OpenSSL's last error as " (OpenSSL: ...)", or nothing; clears its queue.
std::string OpenSslError() {
  const unsigned long e = ERR_peek_last_error();
  std::string out;
  if (e != 0) {
    char text[256];
    ERR_error_string_n(e, text, sizeof(text));
    out = absl::StrCat(" (OpenSSL: ", text, ")");
  }
  ERR_clear_error();
  return out;
}

bool Readable(const std::string& path) { return std::ifstream(path).good(); }

// A passphrase callback that gives none: an encrypted key fails to load instead of prompting on
// the terminal (OpenSSL's default).
int NoPassphrase(char*, int, int, void*) { return 0; }

absl::Status LoadInto(SSL_CTX* ctx, const std::string& cert_file, const std::string& key_file) {
  if (!Readable(cert_file)) return absl::InvalidArgumentError(absl::StrCat("--ssl-certfile: cannot read ", cert_file));
  if (!Readable(key_file)) return absl::InvalidArgumentError(absl::StrCat("--ssl-keyfile: cannot read ", key_file));
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ssl-certfile: ", cert_file, " holds no PEM certificate", OpenSslError()));
  }
  BIO* bio = BIO_new_file(key_file.c_str(), "r");
  EVP_PKEY* key = bio == nullptr ? nullptr : PEM_read_bio_PrivateKey(bio, nullptr, &NoPassphrase, nullptr);
  BIO_free(bio);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ssl-keyfile: ", key_file, " holds no unencrypted PEM private key", OpenSslError()));
  }
  const bool taken = SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
  EVP_PKEY_free(key);
  if (!taken) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ssl-keyfile: ", key_file, " is not the key of --ssl-certfile's certificate", OpenSslError()));
  }
  // TLS 1.0 and 1.1 are deprecated (RFC 8996); OpenSSL 3 allows them at its default security level.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  return absl::OkStatus();
}

// The folder of the running executable, or "" where /proc is not there.
std::string ExecutableDir() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return "";
  const std::string exe(path, static_cast<size_t>(n));
  return exe.substr(0, exe.find_last_of('/'));
}

absl::Status Prepare() {
  // The library beside the executable (how the build and an install lay them out), else where the
  // build put it (tests link the server into executables of their own folder).
  std::string tried;
  void* compat = nullptr;
  for (const std::string& path : {absl::StrCat(ExecutableDir(), "/", kCompatLibrary), std::string(MOE_CIVETWEB_COMPAT_PATH)}) {
    compat = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (compat != nullptr) break;
    absl::StrAppend(&tried, tried.empty() ? "" : "; ", dlerror());
  }
  if (compat == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("HTTPS needs ", kCompatLibrary, " (built with moe-openai-server; keep it beside the executable): ",
                     tried));
  }
  // What civetweb will open and look up (its libssl.so is the library above once that is loaded).
  void* ssl = dlopen("libssl.so", RTLD_LAZY);
  void* crypto = dlopen("libcrypto.so", RTLD_LAZY);
  if (ssl == nullptr || crypto == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("HTTPS: civetweb loads OpenSSL as libssl.so and libcrypto.so, and ", dlerror(),
                     " (install OpenSSL's development package, libssl-dev)"));
  }
  for (const char* name : {"SSL_get_peer_certificate", "SSL_accept", "TLS_server_method"}) {
    if (dlsym(ssl, name) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("HTTPS: civetweb would find no ", name, " in libssl.so (its first handshake would crash)"));
    }
  }
  if ((mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS) == 0) {
    return absl::FailedPreconditionError("HTTPS: civetweb could not initialise its TLS (mg_init_library)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTlsFiles(const std::string& cert_file, const std::string& key_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new failed", OpenSslError()));
  absl::Status s = LoadInto(ctx, cert_file, key_file);
  SSL_CTX_free(ctx);
  return s;
}

absl::Status PrepareCivetwebTls() {
  static const absl::Status prepared = Prepare();  // dlopen and civetweb's TLS set up once per process
  return prepared;
}

int LoadTlsFiles(void* ssl_ctx, const std::string& cert_file, const std::string& key_file) {
  const absl::Status s = LoadInto(static_cast<SSL_CTX*>(ssl_ctx), cert_file, key_file);
  if (!s.ok()) std::fprintf(stderr, "moe-openai-server: %s\n", std::string(s.message()).c_str());
  return s.ok() ? 1 : -1;
}

#else  // built without OpenSSL 3's development files

namespace {
absl::Status NotBuilt() {
  return absl::FailedPreconditionError(
      "this moe-openai-server was built without HTTPS (OpenSSL 3's development files, libssl-dev, were not found "
      "at build time); put a TLS-terminating proxy in front of it, or rebuild");
}
}  // namespace

absl::Status CheckTlsFiles(const std::string&, const std::string&) { return NotBuilt(); }
absl::Status PrepareCivetwebTls() { return NotBuilt(); }
int LoadTlsFiles(void*, const std::string&, const std::string&) { return -1; }

#endif

}  // namespace moe::openai
