#include "coordinator/openai/civetweb_tls.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <string>

#include <civetweb.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"

#if MOE_HTTPS
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#endif

namespace moe::openai {

absl::Status CheckHttpsFlags(const HttpsOptions& https) {
  if (https.certfile.empty() != https.keyfile.empty()) {
    return absl::InvalidArgumentError(https.certfile.empty() ? "--ssl-certfile: required with --ssl-keyfile"
                                                             : "--ssl-keyfile: required with --ssl-certfile");
  }
  if (!https.enabled() && (!https.ca_certs.empty() || https.cert_reqs != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(https.ca_certs.empty() ? "--ssl-cert-reqs" : "--ssl-ca-certs",
                                                   ": needs --ssl-certfile and --ssl-keyfile (HTTPS)"));
  }
  if (https.cert_reqs < 0 || https.cert_reqs > 2) {
    return absl::InvalidArgumentError(absl::StrCat("--ssl-cert-reqs: expected 0 (none), 1 (optional) or 2 (required), got ",
                                                   https.cert_reqs));
  }
  if (https.cert_reqs > 0 && https.ca_certs.empty()) {
    return absl::InvalidArgumentError("--ssl-cert-reqs: clients' certificates need --ssl-ca-certs to be verified against");
  }
  return absl::OkStatus();
}

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

// The flag's file is a regular file this process can open (a FIFO would hang OpenSSL's read).
absl::Status CheckReadable(const char* flag, const std::string& path) {
  if (const absl::Status file = CheckRegularFile(path); !file.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", file.message()));
  }
  if (!std::ifstream(path).good()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  return absl::OkStatus();
}

// A passphrase callback that gives none: an encrypted key fails to load instead of prompting on
// the terminal (OpenSSL's default).
int NoPassphrase(char*, int, int, void*) { return 0; }

absl::Status LoadInto(SSL_CTX* ctx, const HttpsOptions& https) {
  const std::string& cert_file = https.certfile;
  const std::string& key_file = https.keyfile;
  MOE_RETURN_IF_ERROR(CheckReadable("--ssl-certfile", cert_file));
  MOE_RETURN_IF_ERROR(CheckReadable("--ssl-keyfile", key_file));
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
  if (!https.ca_certs.empty()) {
    MOE_RETURN_IF_ERROR(CheckReadable("--ssl-ca-certs", https.ca_certs));
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(https.ca_certs.c_str());
    if (names == nullptr || SSL_CTX_load_verify_locations(ctx, https.ca_certs.c_str(), nullptr) != 1) {
      if (names != nullptr) sk_X509_NAME_pop_free(names, X509_NAME_free);
      return absl::InvalidArgumentError(
          absl::StrCat("--ssl-ca-certs: ", https.ca_certs, " holds no PEM certificate", OpenSslError()));
    }
    SSL_CTX_set_client_CA_list(ctx, names);  // the roots a client is told to present a certificate of
  }
  // Python's CERT_NONE / CERT_OPTIONAL / CERT_REQUIRED, as vLLM's --ssl-cert-reqs.
  SSL_CTX_set_verify(ctx,
                     https.cert_reqs == 0   ? SSL_VERIFY_NONE
                     : https.cert_reqs == 1 ? SSL_VERIFY_PEER
                                            : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                     nullptr);
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

absl::Status CheckTlsFiles(const HttpsOptions& https) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new failed", OpenSslError()));
  absl::Status s = LoadInto(ctx, https);
  SSL_CTX_free(ctx);
  return s;
}

absl::Status PrepareCivetwebTls() {
  static const absl::Status prepared = Prepare();  // dlopen and civetweb's TLS set up once per process
  return prepared;
}

int LoadTlsFiles(void* ssl_ctx, const HttpsOptions& https) {
  const absl::Status s = LoadInto(static_cast<SSL_CTX*>(ssl_ctx), https);
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

absl::Status CheckTlsFiles(const HttpsOptions&) { return NotBuilt(); }
absl::Status PrepareCivetwebTls() { return NotBuilt(); }
int LoadTlsFiles(void*, const HttpsOptions&) { return -1; }

#endif

}  // namespace moe::openai
