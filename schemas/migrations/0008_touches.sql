-- Touches: what brought the visitor, on every visit and call.
-- `channel` is the touch's marketing channel (paid_search, organic_search,
-- paid_social, social, email, referral, direct, offline; '' on rows
-- written before it and on calls no lease was found for), `touch_ts` when
-- the touch (the ad click, the referral) happened: a second ad click in a
-- live session replaces the lease's source, so a call carries the latest
-- click and its time. `first_*` is the visitor's first touch (within
-- `tracker.touch_max_age_days`). New click ids: gbraid and wbraid (Google
-- Ads on iOS), and on calls fbclid and msclkid (visits had them);
-- `ym_uid` is Yandex Metrica's ClientId (the `_ym_uid` cookie).
-- Rows written before this get the visit's own time as its touches' time.
ALTER TABLE visits
    ADD COLUMN gbraid String DEFAULT '',
    ADD COLUMN wbraid String DEFAULT '',
    ADD COLUMN ym_uid String DEFAULT '',
    ADD COLUMN channel String DEFAULT '',
    ADD COLUMN touch_ts DateTime DEFAULT ts,
    ADD COLUMN first_touch_ts DateTime DEFAULT ts,
    ADD COLUMN first_channel String DEFAULT '',
    ADD COLUMN first_utm_source String DEFAULT '',
    ADD COLUMN first_utm_medium String DEFAULT '',
    ADD COLUMN first_utm_campaign String DEFAULT '';

ALTER TABLE calls
    ADD COLUMN gbraid String DEFAULT '',
    ADD COLUMN wbraid String DEFAULT '',
    ADD COLUMN fbclid String DEFAULT '',
    ADD COLUMN msclkid String DEFAULT '',
    ADD COLUMN ym_uid String DEFAULT '',
    ADD COLUMN channel String DEFAULT '',
    ADD COLUMN touch_ts DateTime DEFAULT toDateTime(0),
    ADD COLUMN first_touch_ts DateTime DEFAULT toDateTime(0),
    ADD COLUMN first_channel String DEFAULT '',
    ADD COLUMN first_utm_source String DEFAULT '',
    ADD COLUMN first_utm_medium String DEFAULT '',
    ADD COLUMN first_utm_campaign String DEFAULT '';
