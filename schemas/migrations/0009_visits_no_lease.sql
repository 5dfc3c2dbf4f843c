-- Visits that got the site's own number without a lease, and why:
-- `crawler` (a crawler, link previewer or HTTP library by its user agent),
-- `webdriver` (the page ran under browser automation), `network_rate` (the
-- client's /24 or /48 took its share of new leases of the pool this minute,
-- `tracker.leases_per_network_per_minute`). '' for every other visit.
ALTER TABLE visits ADD COLUMN no_lease String DEFAULT '';
