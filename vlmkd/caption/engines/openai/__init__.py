"""The `openai` engine: `engine` (chat requests and answers), `dispatch` (spreading requests over servers,
retries), `transport` (HTTP on aiohttp: TLS, proxies, bounded answers) and `redaction` (no secret leaves)."""

from vlmkd.caption.engines.openai.dispatch import RetryPolicy
from vlmkd.caption.engines.openai.engine import DEFAULT_API_KEY_ENV, DEFAULT_CONCURRENCY, OpenAIEngine

__all__ = ["DEFAULT_API_KEY_ENV", "DEFAULT_CONCURRENCY", "OpenAIEngine", "RetryPolicy"]
