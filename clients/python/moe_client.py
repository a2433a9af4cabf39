"""Python client of the moe-ep coordinator (public service moe.v1.Inference).

Runs on the Debian interpreter (/usr/bin/python3) with python3-grpcio and python3-protobuf. The
generated modules (moe.v1.*_pb2 and grpc_std.*_pb2, built by the CMake targets moe_proto_python and
moe_grpc_std_python) are imported from $MOE_PYTHON_PROTO_DIR, else from ../../build/python next to
this file.

    from moe_client import MoeClient
    with MoeClient("127.0.0.1:50051") as c:
        for chunk in c.generate("ROMEO:", max_tokens=32):
            print(chunk.text, end="", flush=True)

Errors surface as grpc.RpcError (e.code() == grpc.StatusCode.INVALID_ARGUMENT, ...).
"""

import dataclasses
import json
import os
import sys
from typing import Iterator, List, Optional, Sequence, Union

import grpc


def _proto_dir() -> str:
    env = os.environ.get("MOE_PYTHON_PROTO_DIR")
    if env:
        return env
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "python"))


_PROTO_DIR = _proto_dir()
if _PROTO_DIR not in sys.path:
    sys.path.insert(0, _PROTO_DIR)

try:
    from moe.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
    from grpc_std import health_v1_pb2, health_v1_pb2_grpc  # noqa: E402
    from grpc_std import reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - a setup problem, said plainly
    raise ImportError(
        f"moe_client: cannot import the generated protos from {_PROTO_DIR} ({e}); build the targets "
        "moe_proto_python and moe_grpc_std_python and set MOE_PYTHON_PROTO_DIR to <build>/python") from e

TextOrIds = Union[str, Sequence[int]]

# FinishReason enum value -> the lower-case name moe-client prints.
FINISH_REASONS = {
    inference_pb2.FINISH_REASON_UNSPECIFIED: "",
    inference_pb2.FINISH_REASON_STOP: "stop",
    inference_pb2.FINISH_REASON_LENGTH: "length",
    inference_pb2.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    inference_pb2.FINISH_REASON_CANCELLED: "cancelled",
    inference_pb2.FINISH_REASON_ERROR: "error",
}

_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "stop_token_ids",
                    "logprobs", "ignore_eos", "repetition_penalty", "presence_penalty", "frequency_penalty",
                    "min_tokens", "n", "logit_bias", "response_format", "guided_choice",
                    "guided_regex", "guided_grammar", "include_stop_str_in_output", "truncate_prompt_tokens", "allowed_token_ids",
                    "bad_words", "prompt_logprobs", "skip_special_tokens")


@dataclasses.dataclass
class Completion:
    """A whole Generate stream folded into one result."""
    request_id: str = ""
    token_ids: List[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    stop_reason: Union[str, int, None] = None  # the stop string or stop token id that ended it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens the rank's prefix cache held
    logprobs: list = dataclasses.field(default_factory=list)  # inference_pb2.TokenLogprob, when asked
    # prompt_logprobs: inference_pb2.TokenLogprob of prompt tokens 1..n-1 (with rank), completion 0's
    prompt_logprobs: list = dataclasses.field(default_factory=list)
    index: int = 0  # which of the request's n completions
    prompt_token_ids: List[int] = dataclasses.field(default_factory=list)  # with return_prompt_token_ids


def make_prompt(value: TextOrIds, field: str = "prompt") -> "inference_pb2.Prompt":
    """A str becomes Prompt.text, a sequence of ints Prompt.token_ids."""
    if isinstance(value, str):
        return inference_pb2.Prompt(text=value)
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{field}: give text as str, or a sequence of token ids")
    return inference_pb2.Prompt(token_ids=inference_pb2.TokenIds(ids=[int(i) for i in value]))


def make_sampling(**sampling) -> "inference_pb2.SamplingParams":
    """SamplingParams from keyword arguments named as in the proto (unknown names are an error)."""
    unknown = set(sampling) - set(_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    p = inference_pb2.SamplingParams()
    for name, value in sampling.items():
        if value is None:
            continue
        if name == "stop":
            p.stop.extend([value] if isinstance(value, str) else list(value))
        elif name == "stop_token_ids":
            p.stop_token_ids.extend(int(i) for i in value)
        elif name == "allowed_token_ids":
            p.allowed_token_ids.extend(int(i) for i in value)
        elif name == "bad_words":
            p.bad_words.extend([value] if isinstance(value, str) else list(value))
        elif name == "logit_bias":  # {token id: bias}, as OpenAI's
            for token, bias in dict(value).items():
                p.logit_bias[int(token)] = float(bias)
        elif name == "response_format":
            # "text", "json_object", or OpenAI's {"type": ...} ({"type": "json_schema", "json_schema":
            # {"schema": {...}}}: the output is a value the schema admits)
            kind = value.get("type") if isinstance(value, dict) else value
            types = {"text": inference_pb2.ResponseFormat.TYPE_TEXT,
                     "json_object": inference_pb2.ResponseFormat.TYPE_JSON_OBJECT,
                     "json_schema": inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA}
            if kind not in types:
                raise ValueError(f"response_format: expected 'text', 'json_object' or a json_schema, got {value!r}")
            p.response_format.type = types[kind]
            if kind == "json_schema":
                if not isinstance(value, dict) or not isinstance(value.get("json_schema"), dict) \
                        or "schema" not in value["json_schema"]:
                    raise ValueError("response_format: json_schema needs {'json_schema': {'schema': {...}}}")
                p.response_format.json_schema = json.dumps(value["json_schema"]["schema"])
        elif name == "guided_choice":  # vLLM's: the output is exactly one of these texts
            p.response_format.type = inference_pb2.ResponseFormat.TYPE_CHOICE
            p.response_format.choices.extend(str(c) for c in value)
        elif name == "guided_regex":  # vLLM's: the whole output matches this regular expression
            p.response_format.type = inference_pb2.ResponseFormat.TYPE_REGEX
            p.response_format.regex = str(value)
        elif name == "guided_grammar":  # vLLM's: the whole output is a text of this GBNF grammar
            p.response_format.type = inference_pb2.ResponseFormat.TYPE_GRAMMAR
            p.response_format.grammar = str(value)
        else:
            setattr(p, name, value)
    return p


class MoeClient:
    """A connection to a coordinator's public address ("host:port"). api_key (default: MOE_API_KEY
    from the environment) goes with every call as "authorization: Bearer <key>", as a coordinator
    started with MOE_API_KEY requires. tls_ca_file (default: MOE_TLS_CA_FILE): PEM root
    certificates; the connection is then TLS and the coordinator's certificate (moe-coordinator
    --tls-cert-file) is verified against them, for the address's host or tls_server_name
    (default: MOE_TLS_SERVER_NAME)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: Optional[float] = None,
                 api_key: Optional[str] = None, tls_ca_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None):
        self.address = address
        self.timeout = timeout  # default deadline (seconds) of each call; None: none
        key = api_key if api_key is not None else os.environ.get("MOE_API_KEY", "")
        self._metadata = (("authorization", "Bearer " + key),) if key else None
        ca = tls_ca_file if tls_ca_file is not None else os.environ.get("MOE_TLS_CA_FILE", "")
        if ca:
            with open(ca, "rb") as f:
                roots = f.read()
            name = tls_server_name if tls_server_name is not None else os.environ.get("MOE_TLS_SERVER_NAME", "")
            options = [("grpc.ssl_target_name_override", name)] if name else None
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots),
                                                options=options)
        else:
            self._channel = grpc.insecure_channel(address)
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._health = health_v1_pb2_grpc.HealthStub(self._channel)
        self._reflection = reflection_v1alpha_pb2_grpc.ServerReflectionStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "MoeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return timeout if timeout is not None else self.timeout

    def _call(self, timeout: Optional[float]) -> dict:
        """A call's deadline and metadata (the API key)."""
        return {"timeout": self._deadline(timeout), "metadata": self._metadata}

    # --- generation -------------------------------------------------------------------------

    def generate(self, prompt: Optional[str] = None, token_ids: Optional[Sequence[int]] = None, *,
                 request_id: str = "", timeout: Optional[float] = None, priority: int = 0,
                 cache_salt: str = "", return_prompt_token_ids: bool = False,
                 **sampling) -> Iterator["inference_pb2.GenerateResponse"]:
        """Streams GenerateResponse chunks (token_ids, text delta; the last has finish_reason and
        usage). Give `prompt` (text) or `token_ids`. Sampling keywords: max_tokens, temperature,
        top_k, top_p, min_p, seed, stop, stop_token_ids, logprobs, ignore_eos, repetition_penalty,
        presence_penalty, frequency_penalty, min_tokens, logit_bias ({id: bias}), n (each message's `index` says which
        completion it carries), response_format ("json_object": the output is one JSON object; OpenAI's
        {"type": "json_schema", "json_schema": {"schema": {...}}}: a value the schema admits), guided_choice
        (a list of texts: the output is exactly one of them), guided_regex (the whole output matches this
        regular expression), guided_grammar (the whole output is a text of this GBNF grammar, from its
        rule root); vLLM's include_stop_str_in_output, truncate_prompt_tokens,
        allowed_token_ids, bad_words, prompt_logprobs (each prompt token's logprob, rank and this
        many top alternatives, on completion 0's first message) and skip_special_tokens (False: the
        control tokens generated appear in the text as their pieces, "<s>"). priority: lower is scheduled first (a coordinator started with
        --scheduling-policy priority; others refuse any but 0). cache_salt (vLLM's): the prompt shares
        cached KV blocks only with requests of the same salt. return_prompt_token_ids: the first
        message carries the prompt's token ids (prompt_token_ids) as the model reads them. Closing
        the iterator early (break, or .close()) cancels the request on the server."""
        if (prompt is None) == (token_ids is None):
            raise TypeError("generate: give exactly one of prompt (text) or token_ids")
        request = inference_pb2.GenerateRequest(
            request_id=request_id, priority=priority, cache_salt=cache_salt,
            return_prompt_token_ids=return_prompt_token_ids,
            prompt=make_prompt(prompt if prompt is not None else token_ids),
            sampling=make_sampling(**sampling))
        call = self._inference.Generate(request, **self._call(timeout))
        return self._stream(call)

    @staticmethod
    def _stream(call) -> Iterator["inference_pb2.GenerateResponse"]:
        try:
            for chunk in call:
                yield chunk
        finally:
            call.cancel()  # a no-op once the stream has ended

    def generate_full(self, prompt: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                      **kwargs) -> Completion:
        """The whole completion: ids, text, finish reason, usage and (when asked) logprobs."""
        if kwargs.get("n", 1) not in (None, 1):
            raise TypeError("generate_full returns one completion: use generate_choices for n > 1")
        return self.generate_choices(prompt, token_ids, **kwargs)[0]

    def generate_choices(self, prompt: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                         **kwargs) -> List[Completion]:
        """All n completions of one request (sampling keyword n, default 1; completion i samples with
        seed + i), in index order."""
        n = kwargs.get("n") or 1
        completions = [Completion(index=i) for i in range(n)]
        for chunk in self.generate(prompt, token_ids, **kwargs):
            c = completions[chunk.index]
            if chunk.request_id:
                c.request_id = chunk.request_id
            c.token_ids.extend(chunk.token_ids)
            c.text += chunk.text
            c.logprobs.extend(chunk.logprobs)
            c.prompt_logprobs.extend(chunk.prompt_logprobs)
            if chunk.prompt_token_ids:  # the first message only, completion 0's: the same prompt for all
                for each in completions:
                    each.prompt_token_ids = list(chunk.prompt_token_ids)
            if chunk.finish_reason != inference_pb2.FINISH_REASON_UNSPECIFIED:
                c.finish_reason = FINISH_REASONS[chunk.finish_reason]
                which = chunk.WhichOneof("stop_reason")
                c.stop_reason = getattr(chunk, which) if which else None
            if chunk.HasField("usage"):
                c.prompt_tokens = chunk.usage.prompt_tokens
                c.completion_tokens = chunk.usage.completion_tokens
                c.cached_prompt_tokens = chunk.usage.cached_prompt_tokens
        return completions

    def generate_text(self, prompt: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                      **kwargs) -> str:
        """The generated text (without the prompt)."""
        return self.generate_full(prompt, token_ids, **kwargs).text

    # --- scoring ----------------------------------------------------------------------------

    def score(self, context: TextOrIds, continuation: TextOrIds, *,
              timeout: Optional[float] = None) -> "inference_pb2.ScoreResult":
        """loglikelihood(context, continuation): continuation_token_ids, logprobs, sum_logprob,
        is_greedy."""
        return self.score_many([(context, continuation)], timeout=timeout)[0]

    def score_many(self, items: Sequence[tuple], *, timeout: Optional[float] = None) -> list:
        """Several (context, continuation) pairs in one request; results in the same order."""
        request = inference_pb2.ScoreRequest(items=[
            inference_pb2.ScoreItem(context=make_prompt(ctx, "context"), continuation=make_prompt(cont, "continuation"))
            for ctx, cont in items
        ])
        return list(self._inference.Score(request, **self._call(timeout)).results)

    def score_rolling(self, text: TextOrIds, *, top_logprobs: int = 0,
                      timeout: Optional[float] = None) -> "inference_pb2.ScoreRollingResult":
        """loglikelihood_rolling(text): token_ids, logprobs of every token after the first,
        sum_logprob, num_scored_tokens; with top_logprobs k (at most 20) also each scored token's
        k most probable tokens (result.top[i].top)."""
        request = inference_pb2.ScoreRollingRequest(texts=[make_prompt(text, "text")], top_logprobs=top_logprobs)
        return self._inference.ScoreRolling(request, **self._call(timeout)).results[0]

    # --- tokenizer, model and cluster ------------------------------------------------------

    def tokenize(self, text: str, add_bos: Optional[bool] = None, *, parse_special_tokens: bool = False,
                 timeout: Optional[float] = None) -> List[int]:
        """Text to ids. parse_special_tokens: special tokens written in the text ("<s>", "</s>") become
        their ids, as Hugging Face tokenizers encode a rendered chat template."""
        request = inference_pb2.TokenizeRequest(text=text, parse_special_tokens=parse_special_tokens)
        if add_bos is not None:
            request.add_bos = add_bos
        return list(self._inference.Tokenize(request, **self._call(timeout)).token_ids)

    def detokenize(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True,
                   timeout: Optional[float] = None) -> str:
        """The ids' text; skip_special_tokens False: control tokens written out ("<s> Hello")."""
        request = inference_pb2.DetokenizeRequest(token_ids=[int(i) for i in token_ids],
                                                  skip_special_tokens=skip_special_tokens)
        return self._inference.Detokenize(request, **self._call(timeout)).text

    def token_pieces(self, token_ids: Sequence[int], *, timeout: Optional[float] = None) -> List[str]:
        """Each id's vocabulary entry ("<s>", "\u2581the", "<0x0A>"), as Hugging Face's
        convert_ids_to_tokens gives them."""
        request = inference_pb2.DetokenizeRequest(token_ids=[int(i) for i in token_ids], return_pieces=True)
        return list(self._inference.Detokenize(request, **self._call(timeout)).pieces)

    def model_info(self, *, timeout: Optional[float] = None) -> "inference_pb2.ModelInfo":
        return self._inference.GetModelInfo(inference_pb2.GetModelInfoRequest(), **self._call(timeout))

    def cluster_info(self, *, timeout: Optional[float] = None) -> "inference_pb2.ClusterInfo":
        return self._inference.GetClusterInfo(inference_pb2.GetClusterInfoRequest(), **self._call(timeout))

    def stats(self, *, timeout: Optional[float] = None) -> "inference_pb2.Stats":
        return self._inference.GetStats(inference_pb2.GetStatsRequest(), **self._call(timeout))

    # --- standard gRPC services -------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN"."""
        response = self._health.Check(health_v1_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_v1_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_services(self, *, timeout: float = 5.0) -> List[str]:
        """Full names of the services the server exposes, sorted (server reflection)."""
        request = reflection_v1alpha_pb2.ServerReflectionRequest(list_services="*")
        responses = self._reflection.ServerReflectionInfo(iter([request]), timeout=timeout)
        for response in responses:
            if response.HasField("error_response"):
                raise RuntimeError(f"reflection error {response.error_response.error_code}: "
                                   f"{response.error_response.error_message}")
            return sorted(s.name for s in response.list_services_response.service)
        raise RuntimeError("reflection: the server sent no answer")
