"""Type stubs of the `lowbit` extension module."""

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

__version__: str

class LowbitError(Exception):
    """A model file or source lowbit cannot use."""

class Llama:
    """A quantized model, loaded and ready: llama-cpp-python's `Llama` interface on lowbit's
    batched engine. Safe to share between threads; calls from several threads run batched."""

    def __init__(
        self,
        model_path: str,
        n_ctx: int = 2048,
        n_threads: Optional[int] = None,
        seed: int = 0xFFFFFFFF,
        verbose: bool = False,
        n_parallel: int = 4,
        quant: str = "nf4",
        kv_type: str = "f32",
        lora_path: Optional[str] = None,
        lora_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """`model_path`: a lowbit file, or a GGUF file / Hugging Face or bitsandbytes folder,
        converted once with `quant` into the cache (`LOWBIT_CACHE`, else `~/.cache/lowbit`).
        `kv_type="f16"` halves the KV cache's memory, `"q8"` (int8 in blocks of 32) takes about a
        quarter. `lora_path`: a PEFT LoRA adapter folder (or the adapter file `lowbit convert
        ADAPTER_DIR` makes of it) applied beside the weights (scaled by `lora_scale`; the file
        untouched), as llama-cpp-python's. `n_ctx=0` takes the model's trained context. Other
        llama-cpp-python arguments (n_gpu_layers, use_mmap, ...) are accepted and ignored.
        Everywhere, `max_tokens=None` or a negative value generates until an end token or a
        full context (llama-cpp-python's `-1`); 0 generates nothing (with `echo=True` and
        `logprobs`, it scores the prompt)."""
    def n_ctx(self) -> int: ...
    def n_vocab(self) -> int: ...
    def token_eos(self) -> int:
        """The end-of-sequence token id, or -1."""
    def token_bos(self) -> int:
        """The beginning-of-sequence token id, or -1."""
    def reset(self) -> None:
        """Does nothing: no state is kept between calls."""
    @property
    def metadata(self) -> Dict[str, str]: ...
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]: ...
    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes: ...
    def __call__(self, prompt: Union[str, List[int]], **kwargs: Any) -> Any: ...
    def create_completion(
        self,
        prompt: Union[str, List[int]],
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: Optional[Union[str, List[str]]] = None,
        seed: Optional[int] = None,
        stream: bool = False,
        logprobs: Optional[int] = None,
        echo: bool = False,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        **kwargs: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]: ...
    def create_chat_completion(
        self,
        messages: List[Dict[str, Any]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: Optional[Union[str, List[str]]] = None,
        seed: Optional[int] = None,
        stream: bool = False,
        logprobs: bool = False,
        top_logprobs: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        n: int = 1,
        **kwargs: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]: ...
    def generate_batch(
        self,
        prompts: Sequence[Union[str, List[Dict[str, Any]]]],
        n: int = 1,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: Optional[Union[str, List[str]]] = None,
        seed: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
    ) -> List[Dict[str, Any]]:
        """Many prompts at once on the batched engine; one result per prompt, in order."""
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> List[List[float]]:
        """Per-token log-probabilities of each completion given its prompt."""
    def close(self) -> None:
        """Frees the model now; later calls raise ValueError."""
    def __enter__(self) -> "Llama": ...
    def __exit__(self, *args: Any) -> bool: ...

def convert(src: str, dst: str, quant: str = "nf4", progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Converts a Hugging Face / bitsandbytes folder or a GGUF file into a lowbit file.

    `quant`: nf4, nf4-small, nf4-mix, nf4-plus, q5, q5-mix, fp4, int8, q8, f16, bf16 or f32."""

def inspect(path: str, n_ctx: int = 4096) -> Dict[str, Any]:
    """A lowbit file's architecture, quantization, tensors, bits per weight and RAM estimate."""
