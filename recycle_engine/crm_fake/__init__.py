"""A local Konnektive / Checkout Champ CRM speaking the API of docs/crm-api.md, for tests and the demo.

state.py    the records (transactions, orders, purchases), the query and update rules, faults, the log
server.py   the HTTP side: POST /transactions/query/ ... and /_fake/ admin calls, on loopback
book.py     declines feed rows -> the CRM's records (the inverse of the connector's mapping)
"""
