"""The way in: the start page, the API's root listing, the schema and its docs pages."""
