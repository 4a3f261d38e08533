"""The `openai` engine and its HTTP stack: `engine` (chat requests and replies), `dispatch` (spreading requests
over servers, retries) and `http11` (the minimal asyncio HTTP/1.1 client under them)."""

from vlmkd.caption.engines.openai.dispatch import RetryPolicy
from vlmkd.caption.engines.openai.engine import DEFAULT_API_KEY_ENV, DEFAULT_CONCURRENCY, OpenAIEngine

__all__ = ["DEFAULT_API_KEY_ENV", "DEFAULT_CONCURRENCY", "OpenAIEngine", "RetryPolicy"]
