"""``python -m marlseg.config``: print the config reference table (docs/config.md)."""

from marlseg.config.reference_table import reference_markdown

print(reference_markdown())
