"""Feed parsers: each turns a feed's records into engine Readings, or row errors a person can act on."""

from bff.ingest.engine_csv import CsvParse, RowError, parse_engine_csv

__all__ = ["CsvParse", "RowError", "parse_engine_csv"]
