WITH j AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS j(restaurant_id, adv_campaign_id, job)
)
SELECT x.n
FROM unnest($3::int8[], $4::text[]) WITH ORDINALITY AS x(job, client_id, n)
JOIN j ON j.job = x.job
WHERE (SELECT 1 FROM public.subscribers_feedback f
       WHERE f.restaurant_id = j.restaurant_id AND f.adv_campaign_id = j.adv_campaign_id
         AND f.client_id = x.client_id LIMIT 1) IS NOT NULL
   OR (SELECT 1 FROM public.campaign_notifier_capped k
       WHERE k.restaurant_id = j.restaurant_id AND k.adv_campaign_id = j.adv_campaign_id
         AND k.client_id = x.client_id) IS NOT NULL
