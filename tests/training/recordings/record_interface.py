"""Record kohya-ss/sd-scripts' real command-line and dataset-TOML interface into `sd_scripts_interface.json`.

Run it with the interpreter of an sd-scripts environment, from the sd-scripts checkout (it imports the scripts'
own `setup_parser()` and the dataset schema of `library/config_util.py`, so nothing is read from docs or guessed):

    cd /path/to/sd-scripts && /path/to/venv/bin/python /path/to/record_interface.py <commit> > sd_scripts_interface.json

The project's tests check every flag and TOML key it writes against this file (tests/training/test_recordings.py).
Re-record after upgrading sd-scripts or accelerate and run those tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import version
from typing import Any


def options(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option string and the namespace attribute (dest) it sets; a `--config_file` key must be a dest."""
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    return {
        "option_strings": sorted(s for a in actions for s in a.option_strings),
        "dests": sorted({a.dest for a in actions}),
        "store_true": sorted(a.dest for a in actions if isinstance(a, argparse._StoreTrueAction)),
        "choices": {a.dest: list(a.choices) for a in actions if a.choices},
    }


def schema_keys(schema: Any) -> list[str]:
    return sorted(str(key) for key in schema if key != "subsets")


def main(commit: str) -> dict[str, Any]:
    sys.argv = ["record"]
    sys.path.insert(0, os.getcwd())  # the sd-scripts checkout: its scripts are not an installed package
    import sdxl_train_network
    import train_network
    from accelerate.commands.launch import launch_command_parser
    from library.config_util import ConfigSanitizer

    sanitizer = ConfigSanitizer(True, True, False, True)  # as train_network.py builds it (masked_loss off)
    return {
        "sd_scripts_commit": commit,
        "versions": {name: version(name) for name in ("accelerate", "torch", "transformers", "diffusers")},
        "accelerate_launch": options(launch_command_parser()),
        "train_network.py": options(train_network.setup_parser()),
        "sdxl_train_network.py": options(sdxl_train_network.setup_parser()),
        "dataset_config": {
            "general": schema_keys(sanitizer.general_schema),
            "datasets": schema_keys(sanitizer.db_dataset_schema),
            "subsets": schema_keys(sanitizer.db_subset_schema),
        },
    }


if __name__ == "__main__":
    json.dump(main(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
