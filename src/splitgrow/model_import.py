"""Your own model by name, for the command line: ``package.module:name`` or ``path/to/file.py:name``.

``name`` may be a module instance, an ``nn.Module`` class or a factory function; a class or a factory is called
without arguments. Whatever goes wrong (no such file, an import that fails inside your code, no such name, a
constructor that needs arguments, something that is not a module) is a :class:`~splitgrow.errors.ConfigError`
naming the spec and what to change, so ``splitgrow inspect --model my_net.py:Net`` never ends in a traceback of
splitgrow's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType

from torch import nn

from .errors import ConfigError

_FORM = "give MODULE:NAME (an importable module) or FILE.py:NAME, e.g. my_nets.py:SmallNet"


def is_model_spec(text: str) -> bool:
    """Whether ``text`` names a model of your own (``WHERE:NAME``, or a ``.py`` file whose model is still to be
    named), rather than one of the zoo's."""
    return ":" in text or text.endswith(".py")


def import_model(spec: str) -> nn.Module:
    """The ``nn.Module`` that ``spec`` names (see the module docstring)."""
    if ":" not in spec:  # a file alone: say which models it holds
        module = _load_file(spec, spec)
        raise ConfigError("name the model in the file", spec, f"give {spec}:NAME ({_models_in(module)})")
    source, _, name = spec.rpartition(":")
    if not source or not name or not name.isidentifier():
        raise ConfigError("a model of your own is named by where it is and what it is called", spec, _FORM)
    module = _load_file(source, spec) if source.endswith(".py") else _load_module(source, spec)
    if not hasattr(module, name):
        raise ConfigError(f"{source} has no {name!r}", spec, _models_in(module))
    value = getattr(module, name)
    if not isinstance(value, nn.Module):
        if not callable(value):
            raise ConfigError(f"{name!r} is {_a(type(value).__name__)}, not a model", spec, _FORM)
        try:
            inspect.signature(value).bind()
        except TypeError as error:
            raise ConfigError(
                f"{name} cannot be called without arguments ({error})",
                spec,
                "name a factory function (or a module instance) that builds the model with the arguments you want",
            ) from None
        except ValueError:  # no signature to read (a builtin): calling it will tell
            pass
        try:
            value = value()
        except Exception as error:  # noqa: BLE001 - the user's own code: report where it failed, once
            raise ConfigError(f"building {name} failed: {_user_failure(error)}", spec, "fix that code") from None
    if not isinstance(value, nn.Module):
        raise ConfigError(f"{name} gave {_a(type(value).__name__)}, not an nn.Module", spec, _FORM)
    return value


def _models_in(module: ModuleType) -> str:
    """The models a user's module defines (module instances and nn.Module classes), for a message."""
    found = sorted(
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (
            isinstance(value, nn.Module)  # an instance made there, whatever its class (nn.Sequential, ...)
            or (inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__)
        )
    )
    return f"models defined there: {', '.join(found)}" if found else "it defines no nn.Module"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def parse_input_shape(text: str) -> tuple[int, ...]:
    """One sample's shape from ``"3,32,32"`` (or ``"3x32x32"``): the batch dimension is left out."""
    parts = text.replace("x", ",").split(",")
    digits = all(part.strip().isdigit() for part in parts)  # not int(): it reads "3_2" as 32 and "+3" as 3
    shape = tuple(int(part) for part in parts) if digits else ()
    if not shape or any(size < 1 for size in shape):
        raise ConfigError(
            "the input shape must be positive integers separated by commas",
            text,
            "give one sample's shape without the batch dimension, e.g. 3,32,32 for images or 16000 for audio",
        )
    return shape


def _load_file(source: str, spec: str) -> ModuleType:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", spec, "give the path of the .py file that defines the model")
    unique = f"splitgrow_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(unique, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"{path} cannot be imported as Python", spec, _FORM)
    module = importlib.util.module_from_spec(loader_spec)
    # the file's own folder is importable while it runs, so it may import its neighbours as it does from there
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[unique] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's own code: report where it failed, once
        sys.modules.pop(unique, None)
        raise ConfigError(f"importing {path} failed: {_user_failure(error)}", spec, "fix that file") from None
    finally:
        sys.path.remove(folder)
    return module


def _load_module(source: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as error:
        if error.name is not None and source.startswith(error.name):
            raise ConfigError(
                f"no module named {source!r}",
                spec,
                "install it, run from the folder that holds it, or give the path of a .py file instead",
            ) from None
        raise ConfigError(f"importing {source} failed: {_user_failure(error)}", spec, "fix that module") from None
    except Exception as error:  # noqa: BLE001 - the user's own code
        raise ConfigError(f"importing {source} failed: {_user_failure(error)}", spec, "fix that module") from None


def _user_failure(error: BaseException) -> str:
    """The error and the line of the user's code it came from: enough to find it without a traceback."""
    if isinstance(error, SyntaxError):  # raised by the compiler: the user's line is in the error, not the frames
        return f"SyntaxError: {error.msg} at {error.filename}:{error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    # the last line of the user's own code: not importlib's, splitgrow's or an installed library's (torch's)
    library = (str(Path(__file__).resolve().parent), *(p for p in sys.path if "-packages" in p), "<frozen ")
    own = [frame for frame in frames if not frame.filename.startswith(library) and "importlib" not in frame.filename]
    last = own[-1] if own else (frames[-1] if frames else None)
    where = f" at {last.filename}:{last.lineno}" if last is not None else ""
    return f"{type(error).__name__}: {error}{where}"
