#include "worker/server/worker_flags.h"

#include <algorithm>
#include <charconv>

#include "common/flag_arg.h"

namespace moe {
namespace {

constexpr int64_t kMaxSeconds = int64_t{1} << 31;  // ~68 years: far from the chrono types' limits
constexpr int64_t kMinStepTimeoutSeconds = 10;

absl::Status FlagError(const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", what));
}

absl::StatusOr<int64_t> ParsePositive(const std::string& flag, const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return FlagError(flag, "expected an integer, got '" + s + "'");
  if (v <= 0) return FlagError(flag, "must be positive, got " + s);
  return v;
}

absl::StatusOr<double> ParseFraction(const std::string& flag, const std::string& s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return FlagError(flag, "expected a number, got '" + s + "'");
  if (!(v > 0.0 && v <= 1.0)) return FlagError(flag, "must be in (0, 1], got " + s);
  return v;
}

absl::StatusOr<int64_t> ParseSecondsOrZero(const std::string& flag, const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc::result_out_of_range) return FlagError(flag, absl::StrCat("must be at most ", kMaxSeconds, ", got ", s));
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return FlagError(flag, "expected a whole number of seconds, got '" + s + "'");
  }
  if (v < 0 || v > kMaxSeconds) return FlagError(flag, absl::StrCat("must be in [0, ", kMaxSeconds, "], got ", s));
  return v;
}

absl::StatusOr<uint64_t> ParseSeed(const std::string& flag, const std::string& s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return FlagError(flag, "expected a non-negative integer seed, got '" + s + "'");
  }
  return v;
}

}  // namespace

std::string WorkerUsage() {
  return "usage: [mpirun -np N] moe-worker --coordinator HOST:PORT [--model DIR] [--kv-tokens N]\n"
         "                  [--kv-block-size 16] [--max-batch-tokens 2048] [--device cpu|gpu]\n"
         "                  [--gpu-memory-utilization 0.9] [--synthetic-weights SEED] [--no-enable-prefix-caching]\n"
         "                  [--kv-admission on-demand|reserve] [--enable-peer-exchange]\n"
         "                  [--device-exchange-experts cublas|wgmma] [--step-timeout-s 600]\n"
         "                  [--coordinator-tls-ca-file CA.pem [--cluster-tls-cert-file CERT.pem --cluster-tls-key-file KEY.pem]]\n"
         "One process per rank: registers with the coordinator's cluster service, loads its shard of the\n"
         "model (--model defaults to the coordinator's), and serves the sequences assigned to it.\n"
         "--device gpu runs the rank on a GPU (the node-local rank's; with one GPU per rank the MoE rows\n"
         "cross ranks over NCCL, else through the host); it needs a build with CUDA.\n"
         "--enable-peer-exchange (GPU ranks over NCCL, all on one node with peer access between their GPUs):\n"
         "decode steps write the MoE rows straight into the other GPUs' memory (CUDA IPC) instead of NCCL's\n"
         "fixed-size blocks; where the GPUs cannot reach each other it says why and NCCL carries them.\n"
         "--device-exchange-experts (GPU ranks, one GPU each): above 48 routed rows per expert, an\n"
         "expert-parallel decode step runs its experts through cuBLAS after one wait for the counts a layer\n"
         "(cublas, the default) or through the grouped wgmma kernel, which reads them on the device, so the\n"
         "step stays a CUDA graph (wgmma; Hopper GPUs, elsewhere cuBLAS).\n"
         "--kv-tokens: the KV cache's positions per rank. Without it a GPU rank's cache takes what is left\n"
         "of --gpu-memory-utilization of the GPU's memory after what is in use, its weights and its step\n"
         "buffers; a CPU rank's holds 64 sequences of the full context, at most 262144 positions.\n"
         "--synthetic-weights SEED (--device gpu): seeded random weights built on the GPU for the model's\n"
         "config.json, no checkpoint read: full-size serving benchmarks from a folder holding only config.json.\n"
         "Prefix caching (on by default, as in vLLM and TGI; --no-enable-prefix-caching turns it off;\n"
         "--enable-prefix-caching is accepted): filled KV blocks stay cached after their sequence ends; a\n"
         "later prompt that starts with the same whole blocks attaches them instead of computing them again\n"
         "(one that arrives while another sequence is still prefilling them waits for them), and shared\n"
         "blocks count once when sequences are admitted to the KV cache.\n"
         "--coordinator-tls-ca-file: the coordinator's cluster port serves TLS (moe-coordinator\n"
         "--cluster-tls-cert-file); its certificate is verified against these PEM roots, for the --coordinator\n"
         "host or MOE_TLS_SERVER_NAME.\n"
         "--cluster-tls-cert-file / --cluster-tls-key-file (PEM, both or neither, with --coordinator-tls-ca-file):\n"
         "the certificate this rank shows the cluster port, for a coordinator that requires one (mutual TLS,\n"
         "moe-coordinator --cluster-tls-client-ca-file).\n"
         "--kv-admission: on-demand (the default, as vLLM) admits a sequence once its prompt fits and takes\n"
         "KV blocks as it grows; when a step cannot get its blocks the newest sequence is preempted and later\n"
         "computes its prompt and tokens again (the same tokens). reserve (as TGI) admits a sequence only\n"
         "once prompt + max_tokens fit beside every running sequence's: never preempts, runs fewer at once.\n"
         "--step-timeout-s: a serving loop that has sent no heartbeat of its own for this long (one step that\n"
         "does not end, e.g. in a collective a peer cut off by a network fault never joins) is taken for stuck:\n"
         "the rank's repeated heartbeats stop, so the coordinator counts it lost (--heartbeat-timeout-s later)\n"
         "and a launcher with --restart-workers replaces the job. Slower steps keep the rank alive until then.\n"
         "It also bounds how long a rank may take to leave once its job has ended (Shutdown, or the coordinator\n"
         "lost), say held in a collective by a peer that hangs: it then leaves without MPI (exit 1) and mpirun\n"
         "ends the job's other ranks. 0: never, else at least 10.\n";
}

int64_t DefaultKvTokens(const ModelConfig& c) {
  return std::min<int64_t>(64 * c.context_length(), 262144);
}

absl::StatusOr<WorkerFlags> ParseWorkerFlags(const std::vector<std::string>& args) {
  WorkerFlags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const FlagArg arg = SplitFlagArg(args[i]);
    const std::string& flag = arg.name;
    const bool has_inline = arg.value.has_value();
    std::string val = arg.value.value_or("");
    if (flag == "--help" || flag == "-h") {
      f.help = true;
      continue;
    }
    if (flag == "--enable-prefix-caching" || flag == "--no-enable-prefix-caching") {
      if (has_inline) return FlagError(flag, "takes no value");
      f.enable_prefix_caching = flag == "--enable-prefix-caching";
      continue;
    }
    if (flag == "--enable-peer-exchange" || flag == "--no-enable-peer-exchange") {
      if (has_inline) return FlagError(flag, "takes no value");
      f.enable_peer_exchange = flag == "--enable-peer-exchange";
      continue;
    }
    if (flag != "--coordinator" && flag != "--coordinator-tls-ca-file" && flag != "--cluster-tls-cert-file" &&
        flag != "--cluster-tls-key-file" && flag != "--model" && flag != "--kv-tokens" &&
        flag != "--kv-block-size" &&
        flag != "--max-batch-tokens" && flag != "--device" && flag != "--gpu-memory-utilization" &&
        flag != "--synthetic-weights" && flag != "--kv-admission" && flag != "--device-exchange-experts" &&
        flag != "--step-timeout-s") {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", flag, "'"));
    }
    if (!has_inline) {
      if (i + 1 >= args.size()) return FlagError(flag, "missing value");
      val = args[++i];
    }
    if (flag == "--coordinator") {
      // HOST:PORT with a port that can be (digits, 1 to 65535): 99999 or "abc" waited out the
      // connect timeout (30 s) before saying the coordinator could not be reached. gRPC's unix: and
      // unix-abstract: targets have no port.
      const size_t colon = val.rfind(':');
      const std::string_view digits = colon == std::string::npos ? std::string_view() : std::string_view(val).substr(colon + 1);
      int port = 0;
      const bool digits_only = !digits.empty() && digits.size() <= 5 &&
                               std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
      for (const char c : digits_only ? digits : std::string_view()) port = port * 10 + (c - '0');
      const bool numeric = digits_only && port >= 1 && port <= 65535;
      const bool unix_socket = val.starts_with("unix:") || val.starts_with("unix-abstract:");
      if (colon == std::string::npos || colon == 0 || !(numeric || unix_socket)) {
        return FlagError(flag, "expected HOST:PORT, got '" + val + "'");
      }
      f.coordinator = val;
    } else if (flag == "--coordinator-tls-ca-file" || flag == "--cluster-tls-cert-file" ||
               flag == "--cluster-tls-key-file") {
      if (val.empty()) return FlagError(flag, "empty path");
      (flag == "--coordinator-tls-ca-file" ? f.coordinator_tls_ca_file
       : flag == "--cluster-tls-cert-file" ? f.cluster_tls_cert_file
                                           : f.cluster_tls_key_file) = val;
    } else if (flag == "--model") {
      if (val.empty()) return FlagError(flag, "empty path");
      f.model_dir = val;
    } else if (flag == "--device") {
      if (val != "cpu" && val != "gpu") return FlagError(flag, "expected cpu or gpu, got '" + val + "'");
      f.device = val;
    } else if (flag == "--kv-admission") {
      if (val == "on-demand") {
        f.kv_admission = KvAdmission::kOnDemand;
      } else if (val == "reserve") {
        f.kv_admission = KvAdmission::kReserve;
      } else {
        return FlagError(flag, "expected on-demand or reserve, got '" + val + "'");
      }
    } else if (flag == "--device-exchange-experts") {
      if (val != "cublas" && val != "wgmma") return FlagError(flag, "expected cublas or wgmma, got '" + val + "'");
      f.device_exchange_experts = val;
    } else if (flag == "--kv-tokens") {
      MOE_ASSIGN_OR_RETURN(f.kv_tokens, ParsePositive(flag, val));
    } else if (flag == "--kv-block-size") {
      MOE_ASSIGN_OR_RETURN(f.kv_block_size, ParsePositive(flag, val));
    } else if (flag == "--synthetic-weights") {
      MOE_ASSIGN_OR_RETURN(f.synthetic_seed, ParseSeed(flag, val));
    } else if (flag == "--gpu-memory-utilization") {
      MOE_ASSIGN_OR_RETURN(f.gpu_memory_utilization, ParseFraction(flag, val));
    } else if (flag == "--step-timeout-s") {
      MOE_ASSIGN_OR_RETURN(f.step_timeout_s, ParseSecondsOrZero(flag, val));
      // Timed from the loop's last heartbeat, which a busy loop sends about once a second: a few
      // seconds would take healthy ranks for stuck.
      if (f.step_timeout_s > 0 && f.step_timeout_s < kMinStepTimeoutSeconds) {
        return FlagError(flag, absl::StrCat("must be 0 (never) or at least ", kMinStepTimeoutSeconds, " s, got ", val));
      }
    } else {
      MOE_ASSIGN_OR_RETURN(f.max_batch_tokens, ParsePositive(flag, val));
    }
  }
  if (!f.help && f.coordinator.empty()) return FlagError("--coordinator", "required (HOST:PORT of the coordinator)");
  if (f.cluster_tls_cert_file.empty() != f.cluster_tls_key_file.empty()) {
    return f.cluster_tls_cert_file.empty() ? FlagError("--cluster-tls-cert-file", "required with --cluster-tls-key-file")
                                           : FlagError("--cluster-tls-key-file", "required with --cluster-tls-cert-file");
  }
  if (!f.cluster_tls_cert_file.empty() && f.coordinator_tls_ca_file.empty()) {
    return FlagError("--cluster-tls-cert-file", "needs --coordinator-tls-ca-file (a certificate is shown over TLS only)");
  }
  if (f.enable_peer_exchange && f.device != "gpu") {
    return FlagError("--enable-peer-exchange", "needs --device gpu (it moves rows between GPUs)");
  }
  if (f.device_exchange_experts != "cublas" && f.device != "gpu") {
    return FlagError("--device-exchange-experts", "needs --device gpu (it picks a GPU kernel)");
  }
  if (f.synthetic_seed && f.device != "gpu") {
    return FlagError("--synthetic-weights", "needs --device gpu (the weights are generated on the GPU)");
  }
  return f;
}

}  // namespace moe
