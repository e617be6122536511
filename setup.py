"""Build the C extensions: every ``src/kipc/_native/<name>.c`` becomes ``kipc._native.<name>``.

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

extensions = [
    Extension(
        f"kipc._native.{os.path.splitext(os.path.basename(src))[0]}",
        sources=[src],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    for src in sorted(glob.glob("src/kipc/_native/*.c"))
]

setup(ext_modules=extensions)
