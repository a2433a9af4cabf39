#include "common/pem_file.h"

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace moe {

absl::StatusOr<std::string> ReadPemFile(const std::string& path, PemKind kind, const std::string& source) {
  absl::StatusOr<std::string> pem = ReadTextFile(path);
  if (!pem.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", pem.status().message()));
  const bool certificate = kind == PemKind::kCertificate;
  if (pem->find(certificate ? "-----BEGIN CERTIFICATE-----" : "PRIVATE KEY-----") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", path, certificate ? " holds no PEM certificate" : " holds no PEM private key"));
  }
  return std::move(*pem);
}

}  // namespace moe
