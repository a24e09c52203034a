"""The one error type for bad input: the harness prints its message (which names the fix) and exits 2."""


class HarnessError(Exception):
    """Input the harness cannot run: a recipe, data, a file or the installed stack; raised before work starts."""
