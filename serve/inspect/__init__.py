"""`python -m serve.inspect MODEL.onnx TEXT_FILE`: see what the model learned (serve/inspect/cli.py).

>>> from serve.inspect import inspect_text
>>> figures = inspect_text("runs/tiny/best.onnx", text, features=["vowel=[aeiou]"])
>>> figures["bpc"], figures["positions"][1]["top"], figures["features"]["inside double quotes"][0]
"""

from serve.inspect.cli import main
from serve.inspect.run import InspectModel, inspect_text

__all__ = ["InspectModel", "inspect_text", "main"]
