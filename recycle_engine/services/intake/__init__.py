"""Declines in: the CSV feed and the CRM's rows, checked, deduplicated and written."""
