"""Small text helpers shared by the encoders.

Why it exists: both encoders must treat odd input the same way, or the fast path would not be exact.
"""


def no_surrogates(text: str) -> str:
    """Lone surrogates (possible after JSON `\\ud800` escapes) become U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
