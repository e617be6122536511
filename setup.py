"""Build the C extensions: every ``src/kipc/_native/<name>.c`` becomes ``kipc._native.<name>``,
compiled together with the C files of ``src/kipc/_native/<name without leading _>/`` if that
folder exists (a pure-C core the extension binds, e.g. ``ring/ring_core.c`` for ``_ring``).

``KIPC_SANITIZE=address`` builds them with ASan+UBSan (see ``make sanitize``).
"""

import glob
import os

from setuptools import Extension, setup

sanitize = os.environ.get("KIPC_SANITIZE")
cflags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
ldflags: list[str] = []
if sanitize:
    cflags += [f"-fsanitize={sanitize},undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    ldflags += [f"-fsanitize={sanitize},undefined"]



def _extension(src: str) -> Extension:
    name = os.path.splitext(os.path.basename(src))[0]
    core = sorted(glob.glob(f"src/kipc/_native/{name.lstrip('_')}/*.c"))
    return Extension(f"kipc._native.{name}", sources=[src, *core], extra_compile_args=cflags,
                     extra_link_args=ldflags)


extensions = [_extension(src) for src in sorted(glob.glob("src/kipc/_native/*.c"))]

setup(ext_modules=extensions)
