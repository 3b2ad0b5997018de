"""What inbound SMTP (:mod:`mailstack.smtp`) and outbound delivery (:mod:`mailstack.outbound`)
share without importing each other: reply and enhanced status codes, delivery header fields."""
