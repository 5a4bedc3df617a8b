"""The client side of the `imagejobs` command: sources, images and jobs through the API alone.

`settings` says which API, key and hub to use; `api` makes the HTTP calls; `follow` follows a job
(long poll) and its build log (Server-Sent Events); `render` shows them; `commands` are the click
commands. Nothing here touches the database.
"""
