"""Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, vLLM, llama.cpp, ...), through
the ``openai`` client: its retries with exponential backoff (honouring ``Retry-After``) cover 408, 409, 429,
5xx, timeouts and lost connections. What the endpoint answers is sorted into:

* a reply (text, tokens used, finish reason): checked for quality by the caller;
* a failed request (:class:`RequestFailed`: still 429/5xx/timeout after the retries, or another 4xx such as a
  content filter's 400): journaled as failed and asked again by the next run;
* a fatal error (:class:`UserError`: the key is refused, the model or the URL does not exist): the run stops.

``timeout`` is a deadline for each attempt as a whole (connect, send, wait, read), not for each network read:
see :mod:`dcase_t6.captions.deadline`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dcase_t6.captions.deadline import deadline_hook, end_attempt, last_attempt_expired
from dcase_t6.common.errors import UserError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class EndpointSettings:
    """Where and how to ask.

    Args:
        api_base: the base URL, usually ending in ``/v1`` (e.g. ``https://api.openai.com/v1``,
            ``http://localhost:8000/v1`` for vLLM).
        model: the model name the endpoint serves.
        api_key_env: the environment variable holding the key.
        temperature: sampling temperature (None: the server's default; not sent).
        max_tokens: most tokens of one answer.
        timeout: seconds one attempt may take in all, from sending the request to the last byte of the answer,
            before it is abandoned (and retried); a server that keeps sending slowly is cut off too.
        retries: further attempts after the first on 408/409/429/5xx, timeouts and lost connections.
    """

    api_base: str
    model: str
    api_key_env: str = DEFAULT_KEY_ENV
    temperature: float | None = None
    max_tokens: int = 100
    timeout: float = 60.0
    retries: int = 5

    def generator(self) -> dict:
        """The settings that decide the answers (journal header and sidecar; never the key)."""
        return {"backend": "api", "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class Reply:
    """One answer: text (None when the server sent none), tokens used, finish reason, attempts it took."""

    text: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    attempts: int
    refusal: str | None = None


class RequestFailed(Exception):
    """No answer after the retries (or a 4xx that concerns this request only); asked again on the next run."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


def api_key(settings: EndpointSettings) -> str:
    """The key from ``settings.api_key_env``; a UserError naming the variable to set when it is not set."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        raise UserError(f"environment variable {settings.api_key_env} is not set: export {settings.api_key_env}=<your "
                        f"key for {settings.api_base}> (a local server without keys accepts any value, e.g. "
                        f"export {settings.api_key_env}=none), or name another variable with --api-key-env")
    return key


class ChatEndpoint:
    """A chat-completions client for one endpoint and model; :meth:`ask` is safe to call from several threads."""

    def __init__(self, settings: EndpointSettings):
        import openai

        self.settings = settings
        self._openai = openai
        http_client = openai.DefaultHttpxClient(timeout=settings.timeout,
                                                event_hooks={"request": [deadline_hook(settings.timeout)]})
        self.client = openai.OpenAI(base_url=settings.api_base, api_key=api_key(settings), timeout=settings.timeout,
                                    max_retries=settings.retries, http_client=http_client)

    def ask(self, prompt: str) -> Reply:
        """Send ``prompt`` as the user message.

        Args:
            prompt: the filled template.

        Returns:
            The reply. Raises :class:`RequestFailed` for a request that got no answer, and a UserError when the
            endpoint refuses the key or knows neither the model nor the URL.
        """
        openai, settings = self._openai, self.settings
        extra = {} if settings.temperature is None else {"temperature": settings.temperature}
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=settings.model, messages=[{"role": "user", "content": prompt}],
                max_tokens=settings.max_tokens, **extra)
            attempts = 1 + int(getattr(raw, "retries_taken", 0) or 0)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise UserError(f"{settings.api_base}: the key in {settings.api_key_env} was refused "
                            f"({err.status_code}: {_message(err)}); set a valid key") from None
        except openai.NotFoundError as err:
            raise UserError(f"{settings.api_base}: model {settings.model!r} or the chat-completions URL was not "
                            f"found (404: {_message(err)}); check --model and --api-base (it usually ends with /v1)"
                            ) from None
        except openai.APIStatusError as err:
            retried = err.status_code in (408, 409, 429) or err.status_code >= 500
            raise RequestFailed(f"HTTP {err.status_code}: {_message(err)}",
                                settings.retries + 1 if retried else 1) from None
        except openai.APITimeoutError:
            raise RequestFailed(_late(settings), settings.retries + 1) from None
        except openai.APIConnectionError as err:
            if last_attempt_expired():  # cut off by the deadline of the attempt (a server sending too slowly)
                raise RequestFailed(_late(settings), settings.retries + 1) from None
            raise RequestFailed(f"cannot connect to {settings.api_base} ({_message(err)})",
                                settings.retries + 1) from None
        finally:
            end_attempt()
        return _reply(raw, attempts)


def _reply(raw, attempts: int) -> Reply:
    """The reply of a raw response; a malformed body (not JSON, no choices) is a reply without text."""
    try:
        completion = raw.parse()
        choice = completion.choices[0]
        message = choice.message
        usage = completion.usage
        return Reply(message.content if isinstance(message.content, str) else None,
                     int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                     choice.finish_reason, attempts, getattr(message, "refusal", None))
    except Exception:  # whatever the body holds, it is not a usable answer
        return Reply(None, 0, 0, "malformed", attempts)


def _late(settings: EndpointSettings) -> str:
    return f"no complete answer within {settings.timeout:g} s (--timeout, the deadline of each attempt)"


def _message(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        text = detail.get("message") if isinstance(detail, dict) else detail
        if text:
            return " ".join(str(text).split())[:200]
    return " ".join(str(getattr(err, "message", err)).split())[:200]
