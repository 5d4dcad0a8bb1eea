"""The backend-for-frontend: ingestion and the readings store, the EHR broker, write-back. Imports engine, never app."""
