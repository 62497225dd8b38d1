"""maddy's configuration language: lexer, parser, typed reader, module registry, loader."""

from gmta.config.loader import DEFAULT_CONFIG, LoadedConfig, load, load_text  # noqa: F401
