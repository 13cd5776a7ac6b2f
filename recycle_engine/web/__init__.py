"""The webhook receiver: an entry point beside the CLI, serving FlexFactor's deliveries over HTTP."""
