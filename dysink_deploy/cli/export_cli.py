"""`dysink-export`: export, build, check and inspect DySink artifacts.

Commands live next to what they drive (checkpoint verification here,
ONNX / TensorRT / bundle commands in `dysink_deploy.export.commands`);
this file only assembles them. A `DysinkError` prints one line and exits 2.
"""

from __future__ import annotations

import click

from ..export.check_cmd import check_command
from ..export.commands import COMMANDS
from ..plugins.cli import kernels_command, plugins_command
from ..serving.cli import triton_repo_command
from .common import UserErrorGroup, version_option
from .prompt_cmd import encode_prompt_command
from .verify_cmd import verify_checkpoint


@click.group(cls=UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def main():
    """Export DySink to ONNX / TensorRT, and check every artifact against the PyTorch reference."""


def _register() -> None:
    main.add_command(verify_checkpoint)
    main.add_command(kernels_command)
    main.add_command(plugins_command)
    main.add_command(check_command)
    main.add_command(encode_prompt_command)
    main.add_command(triton_repo_command)
    for cmd in COMMANDS:
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
