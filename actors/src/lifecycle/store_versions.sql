INSERT INTO public.campaign_notifier_campaigns AS c ({COLUMNS})
         SELECT r, c, content, o, contact, start, ends, created, topic, part, off, ts,
                -- A cancelled campaign never fires: its message is not kept.
                CASE WHEN st = 'cancelled' THEN NULL ELSE k END,
                CASE WHEN st = 'cancelled' THEN ''::bytea ELSE m END, st
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::int4[], $11::int8[],
             $12::int8[], $13::bytea[], $14::bytea[], $15::text[])
             AS u(r, c, content, o, contact, start, ends, created, topic, part, off, ts, k, m, st)
         ON CONFLICT (restaurant_id, adv_campaign_id) DO UPDATE SET
             adv_campaign_content = EXCLUDED.adv_campaign_content,
             adv_campaign_owner = EXCLUDED.adv_campaign_owner,
             adv_campaign_owner_contact = EXCLUDED.adv_campaign_owner_contact,
             adv_campaign_datetime_start = EXCLUDED.adv_campaign_datetime_start,
             adv_campaign_datetime_end = EXCLUDED.adv_campaign_datetime_end,
             datetime_created = EXCLUDED.datetime_created,
             source_topic = EXCLUDED.source_topic,
             source_partition = EXCLUDED.source_partition,
             source_offset = EXCLUDED.source_offset,
             source_timestamp_ms = EXCLUDED.source_timestamp_ms,
             message_key = EXCLUDED.message_key,
             message = EXCLUDED.message,
             state = EXCLUDED.state,
             owner = NULL,
             updated_at = now()
         WHERE (c.state IN ('expired', 'refused')
                OR (EXCLUDED.datetime_created, coalesce(EXCLUDED.source_timestamp_ms, {none}),
                    EXCLUDED.source_partition, EXCLUDED.source_offset)
                   >= (c.datetime_created, coalesce(c.source_timestamp_ms, {none}),
                       c.source_partition, c.source_offset))
           AND NOT (c.state IN ('firing', 'active') AND EXCLUDED.state IN ('scheduled', 'cancelled'))