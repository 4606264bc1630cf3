-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
-- The subscriber table of the data contract, as the app that owns it creates it, with a few
-- sample subscribers. campaign-notifier's schema step (postgres.create_schema) creates the rest:
-- subscribers_feedback, the index on subscribers_restaurants (restaurant_id) and its own tables
-- (outbox, campaigns, feed, owners, leaders, clients, capped) and sequence.

CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL, client_id varchar NOT NULL, restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
);

-- Sample subscribers: three for the restaurant of the brief's sample campaign, so that sending
-- that campaign gives three notifications, and two for another restaurant. Inserted only into an
-- empty table, so running the file again adds no duplicates.
INSERT INTO public.subscribers_restaurants (client_id, restaurant_id)
SELECT client_id, restaurant_id
FROM (VALUES
    ('023e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174001', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174002', '123e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174003', '223e4567-e89b-12d3-a456-426614174000'),
    ('023e4567-e89b-12d3-a456-426614174004', '223e4567-e89b-12d3-a456-426614174000')
) AS sample (client_id, restaurant_id)
WHERE NOT EXISTS (SELECT 1 FROM public.subscribers_restaurants);
