WITH pending AS (
    SELECT s.restaurant_id, s.adv_campaign_id, count(*) AS n
    FROM public.campaign_notifier_outbox o
    CROSS JOIN LATERAL unnest(o.feedback_ids) AS m(id)
    JOIN public.subscribers_feedback s ON s.id = m.id
    GROUP BY s.restaurant_id, s.adv_campaign_id
)
SELECT c.restaurant_id, c.adv_campaign_id, c.state,
       c.datetime_created, c.source_timestamp_ms, c.source_partition, c.source_offset,
       c.adv_campaign_datetime_start, c.adv_campaign_datetime_end,
       extract(epoch FROM c.fired_at)::int8 AS fired_at,
       extract(epoch FROM c.updated_at)::int8 AS updated_at, c.recalled_at,
       f.written, f.first_trigger, f.last_trigger,
       coalesce(p.n, 0) AS in_flight,
       (SELECT count(*) FROM public.campaign_notifier_capped k
        WHERE k.restaurant_id = c.restaurant_id AND k.adv_campaign_id = c.adv_campaign_id) AS capped,
       extract(epoch FROM now())::int8 AS now
FROM public.campaign_notifier_campaigns c
CROSS JOIN LATERAL (
    SELECT count(*) AS written,
           min(s.trigger_datetime_created)::int8 AS first_trigger,
           max(s.trigger_datetime_created)::int8 AS last_trigger
    FROM public.subscribers_feedback s
    WHERE s.restaurant_id = c.restaurant_id AND s.adv_campaign_id = c.adv_campaign_id
) f
LEFT JOIN pending p
    ON p.restaurant_id = c.restaurant_id AND p.adv_campaign_id = c.adv_campaign_id
WHERE ($1::text IS NULL OR c.adv_campaign_id = $1)
ORDER BY c.adv_campaign_datetime_start, c.restaurant_id, c.adv_campaign_id
