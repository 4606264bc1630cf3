WITH prior AS (
    SELECT id, feedback_ids FROM public.campaign_notifier_outbox WHERE token = $11
), ins AS (
    INSERT INTO public.subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, client_id, datetime_created, trigger_datetime_created)
    SELECT $1, $2, $3, $4, $5, $6, $7, c, $8, $9 FROM unnest($10::text[]) AS c
    WHERE NOT EXISTS (SELECT 1 FROM prior)
    ON CONFLICT (restaurant_id, adv_campaign_id, client_id) DO NOTHING
    RETURNING id, client_id
), mark AS (
    INSERT INTO public.campaign_notifier_outbox (token, owner, feedback_ids)
    SELECT $11, $12, array_agg(id) FROM ins HAVING count(*) > 0
    RETURNING id
)
SELECT (SELECT id FROM mark),
       CASE WHEN (SELECT count(*) FROM ins) = cardinality($10::text[]) THEN NULL
            ELSE ARRAY(SELECT client_id FROM ins) END
WHERE NOT EXISTS (SELECT 1 FROM prior)
UNION ALL
SELECT p.id,
       ARRAY(SELECT f.client_id FROM unnest(p.feedback_ids) AS m(id)
             CROSS JOIN LATERAL (SELECT client_id FROM public.subscribers_feedback
                                 WHERE id = m.id LIMIT 1) f)
FROM prior p
