"""Pure domain core: no IO, no clock reads; imports only money and errors."""
