#include "clients/cpp/channel.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

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

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const grpc::ChannelArguments& args,
                                          const std::string& api_key) {
  if (api_key.empty()) return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<ApiKeyInterceptorFactory>(api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, grpc::InsecureChannelCredentials(), args,
                                                                 std::move(factories));
}

std::string ApiKeyFromEnv() {
  const char* key = std::getenv(kApiKeyEnv);
  return key != nullptr ? key : "";
}

}  // namespace moe::client
