"""openpole edge agent."""
