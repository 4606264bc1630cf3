WITH due AS (
                     SELECT restaurant_id, adv_campaign_id, state AS was,
                            adv_campaign_datetime_start AS start
                     FROM public.campaign_notifier_campaigns c
                     -- A range of the partial index on the start: only what is due is read,
                     -- however many campaigns wait (a campaign being fired is due too).
                     WHERE state IN ('scheduled', 'firing') AND adv_campaign_datetime_start <= $1
                       AND (state = 'scheduled'
                            OR (owner IS DISTINCT FROM $2 AND (
                             -- Its owner was fenced...
                             EXISTS (SELECT 1 FROM public.campaign_notifier_owners o
                                     WHERE o.owner = c.owner AND o.fenced_at IS NOT NULL)
                             -- ...or has no row (recovered, or a version before leases) and
                             -- no session holds its advisory lock.
                             OR (NOT EXISTS (SELECT 1 FROM public.campaign_notifier_owners o
                                             WHERE o.owner = c.owner)
                                 AND NOT EXISTS (
                                 SELECT 1 FROM pg_locks l
                                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                                   AND l.database = (SELECT oid FROM pg_database
                                                     WHERE datname = current_database())
                                   AND l.classid = ($4::int8 & 4294967295)::oid
                                   AND l.objid = (c.owner::int8 & 4294967295)::oid)))))
                       -- A fenced owner claims nothing.
                       AND EXISTS (SELECT 1 FROM public.campaign_notifier_owners o
                                   WHERE o.owner = $2 AND o.fenced_at IS NULL)
                     ORDER BY adv_campaign_datetime_start
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED),
                 sized AS (
                     SELECT due.*, (SELECT count(*) FROM public.subscribers_restaurants s
                                    WHERE s.restaurant_id = due.restaurant_id) AS audience
                     FROM due),
                 taken AS (
                     SELECT * FROM (
                         SELECT sized.*, sum(audience) OVER (
                             ORDER BY start, restaurant_id, adv_campaign_id) - audience AS before
                         FROM sized) s
                     WHERE before < $5::int8)
                 UPDATE public.campaign_notifier_campaigns c
                 SET state = 'firing', owner = $2, updated_at = now()
                 FROM taken
                 WHERE c.restaurant_id = taken.restaurant_id
                   AND c.adv_campaign_id = taken.adv_campaign_id
                 RETURNING {c.COLUMNS}, taken.was, taken.audience