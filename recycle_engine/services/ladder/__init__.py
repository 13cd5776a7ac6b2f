"""The recycle ladder as finance configures it: config check's review and ladder versions."""
