//! `POST /v1/versions` and `GET /v1/versions/{key}`: the publish API.
//! A batch is validated whole before any of it is applied.
