"""The reference e-commerce domain (customers, catalog, inventory, orders).

Its messages and business rules arrive with the reference application; this
package imports nothing of the project but ``mediator``'s message base classes.
"""
