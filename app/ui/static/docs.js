// Swagger UI on this API's own OpenAPI document. Nothing is fetched from another site: the
// validator badge (which would send the document to validator.swagger.io) is turned off, and
// what a person types into "Authorize" stays in this page's memory.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
