-- The site of the call an attempt forwarded: lets the per-site reports
-- find a site's attempts without joining every call of the node (the
-- lost-call audit's attempts-only rows, whose call has no calls row, are
-- then the site's own). Rows written before it have site = ''.
ALTER TABLE call_attempts ADD COLUMN site String DEFAULT ''
