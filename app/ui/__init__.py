"""The web page that follows a hub's jobs live (/ui/), and the API's documentation (/docs)."""
