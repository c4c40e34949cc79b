"""Request bodies of the OpenAI endpoints (the fields this server honours) and of
``/v1/memories``. Unknown fields are ignored, as OpenAI clients send many; fields the
server cannot honour yet are refused by the routes with a message saying so."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: Optional[str] = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, List[ContentPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """Sampling fields shared by chat and text completions."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=10.0)  # below 0.01 the logits overflow
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1)
    user: Optional[str] = None

    def stops(self) -> List[str]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [x for x in s if x]


class ChatRequest(Sampling):
    messages: List[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    response_format: Optional[Dict[str, Any]] = None
    tools: Optional[List[Any]] = None
    memory: Optional[bool] = None  # extension: read/write the user's memories (server default when None)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)

    def top_k_logprobs(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Sampling):
    prompt: Union[str, List[str], List[StrictInt]]
    echo: bool = False
    response_format: Optional[Dict[str, Any]] = None  # extension, as llama.cpp: json_object / json_schema
    logprobs: Optional[int] = Field(None, ge=0, le=20)

    def top_k_logprobs(self) -> Optional[int]:
        return self.logprobs


class EmbeddingRequest(_Body):
    input: Union[str, List[str]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class MemoryUpdate(_Body):
    text: str = Field(..., min_length=1)
    user: Optional[str] = None


class MemoryAdd(_Body):
    text: str = Field(..., min_length=1)
    user: Optional[str] = None
