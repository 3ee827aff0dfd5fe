"""faas: functions as Docker containers, routed by Traefik."""

__version__ = "0.1.0"
