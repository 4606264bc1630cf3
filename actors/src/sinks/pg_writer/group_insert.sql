WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::int8[], $8::int8[], $9::int4[], $10::int8[], $11::int4[])
        WITH ORDINALITY AS u(restaurant_id, adv_campaign_id, content, owner_name, contact,
                             start_at, end_at, created, trig, token, unit_rows, n)
), ins AS (
    INSERT INTO public.subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, client_id, datetime_created, trigger_datetime_created)
    SELECT u.restaurant_id, u.adv_campaign_id, u.content, u.owner_name, u.contact,
           u.start_at, u.end_at, x.client_id, u.created, u.trig
    FROM unnest($12::int4[], $13::text[]) AS x(unit, client_id) JOIN u ON u.n = x.unit
    ON CONFLICT (restaurant_id, adv_campaign_id, client_id) DO NOTHING
    RETURNING id, restaurant_id, adv_campaign_id, client_id
), per AS (
    SELECT restaurant_id, adv_campaign_id, array_agg(id) AS ids, count(*) AS inserted
    FROM ins GROUP BY restaurant_id, adv_campaign_id
), mark AS (
    INSERT INTO public.campaign_notifier_outbox (token, owner, feedback_ids)
    SELECT u.token, $14, per.ids FROM per JOIN u USING (restaurant_id, adv_campaign_id)
    RETURNING id, token
)
SELECT u.token, mark.id,
       CASE WHEN coalesce(per.inserted, 0) = u.unit_rows THEN NULL
            ELSE ARRAY(SELECT i.client_id FROM ins i
                       WHERE i.restaurant_id = u.restaurant_id
                         AND i.adv_campaign_id = u.adv_campaign_id) END
FROM u LEFT JOIN per USING (restaurant_id, adv_campaign_id)
       LEFT JOIN mark ON mark.token = u.token
ORDER BY u.n
