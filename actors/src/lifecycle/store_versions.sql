INSERT INTO public.campaign_notifier_campaigns AS c ({COLUMNS}, recalled_at)
         SELECT r, c, content, o, contact, start, ends, created, topic, part, off, ts,
                -- A cancelled campaign never fires: its message is not kept.
                CASE WHEN st = 'cancelled' THEN NULL ELSE k END,
                CASE WHEN st = 'cancelled' THEN ''::bytea ELSE m END,
                -- A recall is the row's recalled_at (ms, Postgres' clock) beside the state it
                -- had: 'recalled' is not a state of the table.
                CASE WHEN st = 'recalled' THEN 'active' ELSE st END,
                CASE WHEN st = 'recalled'
                     THEN (extract(epoch FROM clock_timestamp()) * 1000)::int8 END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::int4[], $11::int8[],
             $12::int8[], $13::bytea[], $14::bytea[], $15::text[])
             AS u(r, c, content, o, contact, start, ends, created, topic, part, off, ts, k, m, st)
         ON CONFLICT (restaurant_id, adv_campaign_id) DO UPDATE SET
             -- A recall keeps what went out (the campaign's fields and message) and takes the
             -- recall's version.
             adv_campaign_content = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.adv_campaign_content ELSE c.adv_campaign_content END,
             adv_campaign_owner = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.adv_campaign_owner ELSE c.adv_campaign_owner END,
             adv_campaign_owner_contact = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.adv_campaign_owner_contact ELSE c.adv_campaign_owner_contact END,
             adv_campaign_datetime_start = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.adv_campaign_datetime_start ELSE c.adv_campaign_datetime_start END,
             adv_campaign_datetime_end = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.adv_campaign_datetime_end ELSE c.adv_campaign_datetime_end END,
             datetime_created = EXCLUDED.datetime_created,
             source_topic = EXCLUDED.source_topic,
             source_partition = EXCLUDED.source_partition,
             source_offset = EXCLUDED.source_offset,
             source_timestamp_ms = EXCLUDED.source_timestamp_ms,
             message_key = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.message_key ELSE c.message_key END,
             message = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.message ELSE c.message END,
             state = CASE WHEN EXCLUDED.recalled_at IS NULL THEN EXCLUDED.state ELSE c.state END,
             -- The instance firing a campaign that is recalled goes on owning it (and stops).
             owner = CASE WHEN EXCLUDED.recalled_at IS NULL THEN NULL ELSE c.owner END,
             -- Never undone.
             recalled_at = coalesce(c.recalled_at, EXCLUDED.recalled_at),
             updated_at = now()
         WHERE (c.state IN ('expired', 'refused')
                OR (EXCLUDED.datetime_created, coalesce(EXCLUDED.source_timestamp_ms, {none}),
                    EXCLUDED.source_partition, EXCLUDED.source_offset)
                   >= (c.datetime_created, coalesce(c.source_timestamp_ms, {none}),
                       c.source_partition, c.source_offset))
           AND NOT (c.state IN ('firing', 'active') AND EXCLUDED.state IN ('scheduled', 'cancelled'))