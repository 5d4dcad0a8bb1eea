"""The clinician web app (Litestar + Jinja2 + htmx + Plotly), launched inside the EHR."""
