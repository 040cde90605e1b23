"""The configs shipped with minigpt. Installed as the package minigpt.configs, so that a
pip-installed minigpt finds them from any folder: `python train.py --config shakespeare_char` and
minigpt.config.config_path("default") (this file only makes the folder a package)."""
