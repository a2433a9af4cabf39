// PEM files that a flag or an environment variable names (TLS certificates, roots and keys): read
// and checked to hold what they should before anything uses them, with errors that start with the
// flag or variable and name the file.
#pragma once

#include <string>

#include "common/status.h"

namespace moe {

enum class PemKind {
  kCertificate,  // a certificate chain or root certificates ("-----BEGIN CERTIFICATE-----")
  kPrivateKey,   // a private key ("... PRIVATE KEY-----")
};

// InvalidArgument "<source>: <why>" when `path` cannot be read or holds no PEM of `kind`.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, PemKind kind, const std::string& source);

}  // namespace moe
