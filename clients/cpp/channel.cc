#include "clients/cpp/channel.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include "common/pem_file.h"
#include "common/secret_token.h"

namespace moe::client {
namespace {

class ApiKeyInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit ApiKeyInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({kAuthorizationMetadata, header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;
};

class ApiKeyInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ApiKeyInterceptorFactory(std::string api_key) : header_("Bearer " + std::move(api_key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new ApiKeyInterceptor(header_);
  }

 private:
  std::string header_;  // outlives the interceptors: the channel owns the factory
};

}  // namespace

absl::StatusOr<ChannelSecurity> SecurityFromEnv() {
  ChannelSecurity s;
  s.api_key = ApiKeyFromEnv();
  if (const char* ca = std::getenv(kTlsCaFileEnv); ca != nullptr && *ca != '\0') {
    MOE_ASSIGN_OR_RETURN(s.tls_ca_pem, ReadPemFile(ca, PemKind::kCertificate, kTlsCaFileEnv));
  }
  if (const char* name = std::getenv(kTlsServerNameEnv); name != nullptr) s.tls_server_name = name;
  return s;
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const grpc::ChannelArguments& args,
                                          const ChannelSecurity& security) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments channel_args = args;
  if (!security.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = security.tls_ca_pem;
    ssl.pem_cert_chain = security.tls_cert_pem;  // empty: none shown
    ssl.pem_private_key = security.tls_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!security.tls_server_name.empty()) channel_args.SetSslTargetNameOverride(security.tls_server_name);
  }
  if (security.api_key.empty()) return grpc::CreateCustomChannel(target, credentials, channel_args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<ApiKeyInterceptorFactory>(security.api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, channel_args,
                                                                 std::move(factories));
}

std::string ApiKeyFromEnv() {
  const char* key = std::getenv(kApiKeyEnv);
  return key != nullptr ? key : "";
}

}  // namespace moe::client
