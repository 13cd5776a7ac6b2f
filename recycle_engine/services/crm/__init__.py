"""The CRM at both ends: pull declines in, push changes out."""
