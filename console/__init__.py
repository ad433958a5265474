"""The moderators' console at ``/console/``: server-side pages (Jinja templates) that read
through the query API's views and act only through the command service, so every action is an
event with the moderator's API client as its actor. Plain HTML forms: reading works without
JavaScript; one inline script moves the tree page's slider."""
